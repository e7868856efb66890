"""Model providers: the local embedding model and an optional OpenAI-compatible chat endpoint.

Heavy dependencies (torch, sentence-transformers) are imported lazily; a missing one raises an error
naming the ``ai`` extra.
"""
