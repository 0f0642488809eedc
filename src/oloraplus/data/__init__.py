"""Data: read instruction files into Examples, split, render prompts, tokenise with masked prompts, batch."""
