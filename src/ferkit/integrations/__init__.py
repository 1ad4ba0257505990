"""ferkit inside other engines: Ray Data and Spark adapters over EmotionRecognizer (docs/distributed.md).

    from ferkit.integrations.ray import EmotionPredictor, predict_to_parquet   # pip install 'ferkit[ray]'
    from ferkit.integrations.spark import predict_udf, pandas_predict_udf     # pip install 'ferkit[spark]'

Importing this package imports neither engine; `core` holds the row both produce (one per image, a list of faces).
"""
