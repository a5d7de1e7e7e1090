"""shared: the only code the eight paper packages share, in layers.

Each layer is a subpackage and imports only the layers above it in this list (tests check it);
papers import shared, never each other, and shared imports no paper.

``shared.errors``
    UsageError: the base of every "bad input" error (one line, exit status 2 on the command line).
``shared.parallel``: the ground floor
    dist (start-up from torchrun or a single process, ``spawn`` for tests, a collective timeout),
    topology (groups for data, 1d, 2d, 2p5d, 3d, seq and expert parallelism), comm (collectives
    as autograd Functions in conjugate pairs, byte counters, device checks), seeding (RNG
    streams), tp1d (Megatron 1D tensor-parallel layers).
``shared.bench``
    measure (CUDA-synchronised timers, peak memory, saved-for-backward bytes, hardware line) and
    tables (paper-vs-ours tables as CSV + Markdown, copied into READMEs between markers).
``shared.data``
    sampler (a deterministic, resumable batch sampler) and text_corpus (token corpora streamed
    in bounded memory; ``.bin`` token files memory-mapped).
``shared.train``: the one training core
    config (one glossary of field names, presets, ``--key value``), schedule, checkpoint, run
    directories, the loop (gradient all-reduce, clipping by the global norm, metrics, progress,
    resume, SIGTERM), and cli (one-line errors with exit status 2).
``shared.pointcloud``: 3D building blocks (imported module by module)
    points, shapes, scenes, pcio, render, bench_points.
``shared.export``
    ``make export-<paper> DEST=dir``: one paper plus the shared layers it imports, standalone.
"""
