"""One module per adapter method, each registering its `oloraplus.adapters.registry.Method` record."""
