"""Harmon training on `transformers.Trainer` (the paper's three stages): see issue #4."""
