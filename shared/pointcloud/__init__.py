"""3D building blocks, imported module by module (``from shared.pointcloud import points``).

points (batched point-cloud operations, each with a slow reference used by tests and bench),
shapes (procedural categories with parts and keypoints; ``python -m shared.pointcloud.shapes``),
scenes (indoor rooms with oriented boxes; ``python -m shared.pointcloud.scenes``),
pcio (PLY/PCD/OFF/XYZ through open3d; ModelNet40, ShapeNet part, ShapeNetCore HDF5),
render (matplotlib pictures), bench_points (``make bench-points``).
"""
