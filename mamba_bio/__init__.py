"""mamba_bio: DNA for Mamba models.

FASTA (pyfaidx index) -> fasta.Genome -> windows / species / labelled datasets -> token ids
tokenizer   character-level, HyenaDNA/Caduceus ids, reverse complement on ids
fasta       indexed FASTA access, 0-based half-open, [PAD] past the ends
windows     BED intervals (split column) and the Mamba paper's window sampling
species     species.tsv and the great-apes sampling protocol (species -> record -> window)
labelled    sequence tables and Genomic Benchmarks folders, padding-safe batches
models      DNAClassifier (mean/last pooling, BiMamba, RC-equivariant)
inference   per-window predictions, streamed record embeddings
manifests   data_manifests/*.yaml and `fetch`
checkpoints loading run folders, safetensors, weights-only last.ckpt
cli         the `mamba-bio` command
errors      every exception, each subclassing its builtin
"""
