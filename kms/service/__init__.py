"""Use cases, independent of transport and storage: keys, data keys, reconciliation."""
