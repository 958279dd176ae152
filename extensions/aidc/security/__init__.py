"""Security building blocks: the audit event stream (and, later, encryption and its verifier)."""
