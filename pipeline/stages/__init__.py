"""One video's path through the pipeline, without Ray; both executors run these stages.

In the order the data flows:

    config.py   what a video's processing depends on (decode, flow, encode, sample settings)
    plan.py     probe the video, decide the frames and fields it keeps
    chunks.py   stage 1, decode: stream its frames as ChunkJobs (a CPU task)
    fields.py   stage 2, flow + encode: flow fields of chunks, encoded with their frames
    warped.py   stage 2b (--flow-warp): flow of camera-compensated pairs
    samples.py  stage 3: a video's encoded chunks -> its webdataset samples
    video.py    the stages chained in-process (`process_video`), and a video's result

The stages are separate functions because Ray runs them in different places
(`pipeline.cluster`); what crosses between them is what the next stage needs and no more.
"""
