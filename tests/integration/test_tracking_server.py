"""The real tracking stack: MLflow server on a private PostgreSQL cluster, artifacts on
the loopback S3 server."""

from __future__ import annotations


def test_server_stores_runs_in_postgres_and_artifacts_in_s3(mlflow_server, mlflow_uri, tmp_path):
    import boto3
    import mlflow
    import psycopg2

    exp = mlflow.create_experiment("smoke-server")
    (tmp_path / "a.txt").write_text("hello\n")
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_metric("m", 0.5)
        mlflow.log_artifact(str(tmp_path / "a.txt"))
    dsn = mlflow_server.backend.replace("+psycopg2", "")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("select key, value from metrics where run_uuid = %s", (run.info.run_id,))
        assert cur.fetchall() == [("m", 0.5)]
    s3 = boto3.client(
        "s3",
        endpoint_url=mlflow_server.s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow-artifacts")["Contents"]]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/a.txt") for k in keys), keys
    got = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="a.txt")
    assert open(got).read() == "hello\n"
