"""Stage data: the metadata reader, validation suites, chunks under DVC, the split."""
