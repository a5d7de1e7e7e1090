"""Skeleton Merger (CVPR 2021, arXiv 2103.10814): unsupervised aligned 3D keypoints by
reconstructing a point cloud from a skeleton of its keypoints. See README.md."""
