"""arena-decontam: staged detection of benchmark items leaked into training corpora (see README.md)."""
