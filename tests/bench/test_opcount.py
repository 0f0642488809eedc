"""bench/opcount.py's counter counts known modules exactly; host-only optimizer work is left out; kernel calls parse."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from opcount import OpCounter, kernel_calls  # noqa: E402

from oloraplus.adapters.lean import lora_linear, lora_linears  # noqa: E402


def by_name(counter: OpCounter, phase: str) -> dict[str, int]:
    return {f"{f.overloadpacket.__name__}.{f._overloadname}": n for f, n in counter.ops[phase].items()}


def test_linear_relu_forward_and_backward_are_exact_op_lists():
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)  # no grad: only the weight and bias gradients
    with OpCounter() as counter:
        y = torch.relu(linear(x))
        counter.phase = "backward"
        y.backward(torch.ones_like(y))
    # linear on a 2-D input: t(W) then addmm(b, x, Wᵀ); relu saves its output (a detach)
    assert by_name(counter, "forward") == {"t.default": 1, "addmm.default": 1, "relu.default": 1, "detach.default": 1}
    assert counter.total("forward", views=False) == 2
    backward = by_name(counter, "backward")
    assert backward["threshold_backward.default"] == 1 and backward["mm.default"] == 1  # dW = gᵀ x
    assert backward["sum.dim_IntList"] == 1  # db
    assert counter.total("backward", views=False) == 4  # ones_like, threshold_backward, mm, sum
    assert counter.syncs == 0


def count_lora(layers: int, stacked: bool) -> OpCounter:
    """Ops of `layers` LoRA layers reading one x: bf16 base, fp32 A and B, bf16 autocast, as on a GPU."""
    torch.manual_seed(0)
    parts = [(torch.randn(6, 8, dtype=torch.bfloat16), None, torch.randn(2, 8, requires_grad=True),
              torch.randn(6, 2, requires_grad=True), 0.5) for _ in range(layers)]
    x = torch.randn(3, 5, 8, dtype=torch.bfloat16, requires_grad=True)
    gs = [torch.randn(3, 5, 6, dtype=torch.bfloat16) for _ in range(layers)]
    with OpCounter() as counter:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ys = lora_linears(x, parts) if stacked else [lora_linear(x, *p) for p in parts]
        counter.phase = "backward"
        torch.autograd.backward(ys, gs)
    assert all(y.dtype == torch.bfloat16 for y in ys) and x.grad.dtype == torch.bfloat16
    assert all(p[2].grad.dtype == p[3].grad.dtype == torch.float32 for p in parts)
    return counter


def test_lean_lora_linear_is_five_forward_and_seven_backward_ops():
    """The counts `oloraplus.adapters.lean.lora_linears` documents for one layer."""
    counter = count_lora(1, stacked=False)
    assert counter.total("forward", views=False) == 5  # A, B cast; x Aᵀ, x Wᵀ, addmm_ of s·h Bᵀ
    assert counter.total("backward", views=False) == 7  # g B; g W + s·gh A; s·ghᵀx, s·gᵀh; two casts
    assert counter.total(views=False) == 12


def test_stacked_q_k_v_dispatch_fewer_ops_than_three_layers():
    """Three layers reading one x (q/k/v): one stacked A matmul and one backward node instead of three."""
    separate, stacked = count_lora(3, stacked=False), count_lora(3, stacked=True)
    assert separate.total("forward", views=False) == 15
    assert separate.total("backward", views=False) == 3 * 7 + 2  # + autograd adding x's three gradients
    assert stacked.total("forward", views=False) == 12  # cat + cast of the A's, one x Aᵀ; per layer B cast, 2 mm
    assert stacked.total("backward", views=False) == 16
    assert stacked.names("backward")["add"] == 0 and stacked.total() < separate.total() - 10


def test_host_tensors_are_not_counted_and_device_reads_are_syncs():
    step = torch.tensor(3.0)  # like foreach AdamW's per-parameter step, kept on the host
    device_tensor = torch.ones(4)
    with OpCounter(host=[step]) as counter:
        step.add_(1)
        float(step)  # host read: no kernel, no sync
        int(device_tensor.sum())  # a device read: an op and a sync
    assert by_name(counter, "forward") == {"sum.default": 1, "_local_scalar_dense.default": 1}
    assert counter.syncs == 1


def test_fused_adamw_is_one_op_per_group():
    params = [torch.nn.Parameter(torch.randn(3)) for _ in range(4)]
    optimizer = torch.optim.AdamW(params, lr=0.1, fused=True)
    for p in params:
        p.grad = torch.ones(3)
    optimizer.step()  # creates the state
    with OpCounter() as counter:
        optimizer.step()
    names = by_name(counter, "forward")
    assert names.get("_fused_adamw_.default") == 1
    assert names.get("_local_scalar_dense.default") is None


WRAPPER = '''
cpp_fused_add_0 = async_compile.cpp_pybinding(['float*'], r"""...""")

def call(args):
    arg0_1, arg1_1 = args
    buf0 = empty_strided_cpu((4, 4), (4, 1), torch.float32)
    extern_kernels.mm(arg0_1, arg1_1, out=buf0)
    buf1 = reinterpret_tensor(buf0, (16, ), (1, ), 0)
    cpp_fused_add_0(buf1, arg0_1)
    buf2 = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default(buf0, buf0, buf0)
    triton_poi_fused_mul_1.run(buf1, 16, stream=stream0)
    del arg0_1
    return (buf0, )

def benchmark_compiled_module():
    extern_kernels.mm(a, b)
'''


def test_kernel_calls_counts_launches_in_call_only():
    assert kernel_calls(WRAPPER) == [
        "extern_kernels.mm", "cpp_fused_add_0",
        "torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default", "triton_poi_fused_mul_1.run",
    ]
