"""Models of Canonical Voting: the sparse backbone and the detection heads."""
