"""The shared domain: sessions, runs, children, fan-outs, batches and admission.

Used by the API and the workers alike. Beyond the database it does no I/O but the few
Redis signals a domain step needs (cancellation).
"""
