"""Data preparation: challenge-format shards and a SentencePiece tokenizer from local text, and the
embedded generated default corpus. Sits above core (imports `core.data` for the shard format)."""
