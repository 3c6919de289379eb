"""Dataset sources, metadata folders and tf.data pipelines."""
