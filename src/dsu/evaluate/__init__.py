"""`dsu eval`: models scored on MUSDB-style folders (`tracks`), by the metrics the community ranks
models with (`metrics`), with the corpus' oracles beside them (`oracles`)."""
