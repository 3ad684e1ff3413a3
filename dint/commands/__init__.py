"""The command line: `dint shard|info|train|render|bench|scale|report` and the studies behind bench and scale."""
