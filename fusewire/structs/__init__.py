"""FUSE wire structs: construct schemas, derived fast codecs, per-minor layout."""
