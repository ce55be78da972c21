"""Mount mode: the pyfuse3 + trio filesystem daemon and its data path."""
