"""Adapters in PEFT format: target selection, OLoRA init, method wiring (lora/olora/pissa/dora), export."""
