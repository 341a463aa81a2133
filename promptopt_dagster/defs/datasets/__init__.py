"""The datasets area: a dataset's splits loaded and validated into the warehouse (`dataset_splits`), and an
optimization's start, which records its settings as a generation and its rows (`optimization`), with the
source model's answers as references in a model migration (`migration_references`); the jobs
`prepare_dataset` and `start_optimization` run them."""
