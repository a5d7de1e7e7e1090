"""Single-device model code (nothing distributed here): the PointNet++ MSG encoder and the Skeleton
Merger network."""
from .pointnet2 import PointNet2MsgSeg, SetAbstractionMsg, FeaturePropagation, SharedMLP
from .skeleton_merger import SkeletonDecoder, SkeletonMerger, SkeletonOutput, edge_list

__all__ = ["PointNet2MsgSeg", "SetAbstractionMsg", "FeaturePropagation", "SharedMLP",
           "SkeletonDecoder", "SkeletonMerger", "SkeletonOutput", "edge_list"]
