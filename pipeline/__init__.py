"""flowshard pipeline: videos -> optical flow -> WebDataset shards."""


def open_dataset(path, **kwargs):
    """Open a built dataset for reading; see pipeline.dataset.open_dataset."""
    from pipeline.dataset import open_dataset as _open

    return _open(path, **kwargs)


__all__ = ["open_dataset"]
