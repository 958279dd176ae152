"""GPUs: what the machine has (:mod:`.inventory`) and who holds what (:mod:`.ledger`)."""
