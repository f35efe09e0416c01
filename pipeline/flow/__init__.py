"""Optical flow: frame pairs in, dense fields out, quantized for storage.

estimators   the FlowEstimator protocol, ESTIMATORS (the one table: name -> params, input, backends,
             devices, learned) and make_estimator; ALGORITHMS, BACKENDS and LEARNED derive from it
config       FlowConfig (which flow a build computes), default batch sizes, --flow-param parsing
params       each estimator's parameter record, TorchOptions, the frame-batch check
quantize     the uint8 quantization convention (TSN's, rounded) and its inverse
opencv       OpenCV TV-L1, Farneback and DIS on CPU
tvl1_torch   batched TV-L1 in torch (CPU or CUDA), OpenCV's algorithm
raft         torchvision RAFT (small, large) from a local checkpoint
searaft      SEA-RAFT (S, M) from a local checkpoint
device       what every torch estimator shares: devices, dtypes, overlapped copies
batch        pair batching for a flow actor, across chunks of several videos
accuracy     scoring an estimator on pairs of known motion (EPE, outliers, pairs/s)
warp         warped flow: camera motion estimated and removed from the field
"""
