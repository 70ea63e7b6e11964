"""The lab's building blocks, one concern per module; the pages in app/views/ lay out widgets and
call these and the diablo library (no tensor math in the UI).

- settings: environment (checkpoint folder, cache root, synthetic gallery, device, torch threads)
- errors: exceptions as one-line messages
- store: the caching policy, and the one process-wide store of background jobs and its worker thread
- models: checkpoints, model cards and loaded models
- galleries: gallery specs and datasets, their cache keys, thumbnails (arrays and PNG bytes)
- passes: the background gallery passes (embeddings then Recall@K, entry statistics), partial results
- waiting: progress bars that poll a pass (st.fragment(run_every=...)), a failed pass's retry
- inspection: one image under one model (attention, embedding), search, attributions, why two images match
- projections: 2-D maps of the gallery embeddings (PCA now, UMAP in the background)
- uploads: decoding uploaded bytes with a one-line verdict
- picker: the image picker (gallery number, gallery grid, upload)
- controls: widgets that mean the same on every page (colormap, opacity, embedding choice)
- figures: every chart, overlay and figure image the pages show (match maps and region-to-region links)
- output: legends, result captions, metric rows, PNG downloads
- runs: run directories still training (their run.json, re-read when replaced)
- sidebar: the shared sidebar (drawn once by app/main.py) and what pages read from it
"""
