"""OWL-ST: self-training an open-vocabulary detector on pseudo-boxes it finds in captioned
images (Minderer et al. 2023). Stages (``palix owl ...``, docs/owl.md): ``ngrams`` turns captions
into queries, ``pseudo_labels`` keeps the detector's boxes for them and writes COCO files,
``ensemble`` averages checkpoints in weight space."""
