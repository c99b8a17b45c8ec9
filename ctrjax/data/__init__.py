"""Datasets: schema, streaming writer, validated memmapped loading and the batch loader. Preparing a
dataset from its raw files is data_prep/'s job (``data_prep.prepare``); the library takes its path."""
