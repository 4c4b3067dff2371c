"""The dataset format and its reader: the TFRecord schema (`records`), crash-safe commits of shard groups
(`commits`), what a directory holds as committed so far (`catalog`), whole-dataset writing for tools and tests
(`writer`), held-out selection (`split`), the tf.data input pipeline (`reader`) and synthetic datasets
(`synthetic`)."""
