"""Canonical Voting (arXiv 2011.12001, CVPR 2022): 3D object detection by local canonical coordinates."""
