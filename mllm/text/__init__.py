"""Tables as text: the shared encoder (codes 0..999), the prompt format, the tokenizer, the encode stage's
corpus shards."""
