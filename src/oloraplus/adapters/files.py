"""The files of a saved adapter directory, named once for the code that writes (export, compose) and reads them.

PEFT's own names, plus oloraplus's metadata: the base fingerprint (adapters from another base are refused),
the base as given and as loaded, and the method.
"""

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_WEIGHTS_FILE = "adapter_model.bin"  # older PEFT saves: never loaded (pickle runs code)
META_FILE = "oloraplus_adapter.json"  # {"base_fingerprint", "base_model", "method", ...}
