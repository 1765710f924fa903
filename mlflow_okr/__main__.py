from mlflow_okr.cli import main

main()
