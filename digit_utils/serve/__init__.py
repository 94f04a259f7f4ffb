"""`digits serve` and `digits predict`: the HTTP app (``app``), what a request may bring
(``inputs``), the Predictor for your own images (``predictor``) and image loading (``images``)."""
