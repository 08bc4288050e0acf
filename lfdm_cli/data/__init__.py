"""Datasets: the project's own format (`dataset`), importers for MUG, MHAD, NATOPS and folders of
videos (`importers`), and the SynthFaces generator (`synthfaces`)."""

from lfdm_cli.data.dataset import Dataset, VideoRecord, is_dataset_dir

__all__ = ["Dataset", "VideoRecord", "is_dataset_dir"]
