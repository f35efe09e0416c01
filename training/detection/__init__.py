"""Action detection after Gkioxari & Malik, "Finding action tubes" (CVPR 2015, arXiv 1411.6031).

    data.py     detection items from the same shards and loader stages as classification:
                one frame and the L flow fields centred on it, with the frame's boxes
    tubes.py    per-frame detections linked into action tubes by dynamic programming,
                then trimmed in time
    metrics.py  frame-mAP and video-mAP (spatio-temporal tube overlap), VOC average precision
    engine.py   the training loop and the evaluation that runs the detector on every frame

The two-stream region detector itself is training.models.detection.
"""
