"""One module per schema revision, chained by revision/down_revision."""
