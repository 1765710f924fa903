"""The live OKR board: a Flask app (`mlflow-okr board`) also mounted at /okr/ in `mlflow server`.

Import `mlflow_okr.board.app` for the app; this package module stays empty so that the request
header provider can look for `mlflow_okr.board.credentials` without importing Flask.
"""
