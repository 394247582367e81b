"""Webdataset shards: write them from any image source, stream them in batches, inspect them."""

from kdpipe.data.shards.inspect import InspectReport, inspect_shards
from kdpipe.data.shards.patterns import expand_pattern
from kdpipe.data.shards.stream import ShardStream
from kdpipe.data.shards.write import encode_image, write_shards

__all__ = ["InspectReport", "ShardStream", "encode_image", "expand_pattern", "inspect_shards", "write_shards"]
