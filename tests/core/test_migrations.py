from clickhouse_connect.driver.client import Client

from crumb.migrations import Dialect, all_migrations, apply


def schema(client: Client) -> dict[str, str]:
    rows = client.query("SELECT name, create_table_query FROM system.tables WHERE database = 'crumb'").result_rows
    return dict(rows)


def test_migrate_twice_changes_nothing(warehouse: Client) -> None:
    before = schema(warehouse)
    assert apply(warehouse, Dialect()) == []
    assert schema(warehouse) == before
    recorded = {r[0] for r in warehouse.query("SELECT id FROM crumb.schema_migrations FINAL").result_rows}
    assert recorded == {m.id for m in all_migrations()}


def test_retention_follows_the_setting(warehouse: Client) -> None:
    assert "toIntervalDay(180)" in schema(warehouse)["events"]


def test_cluster_dialect_replicates_and_runs_on_the_cluster() -> None:
    dialect = Dialect(cluster="crumb")
    for migration in all_migrations():
        for statement in migration.statements:
            rendered = dialect.render(statement)
            if rendered.lstrip().startswith("INSERT INTO"):
                # Data, written once: the replicated table hands it to every replica.
                assert "ON CLUSTER" not in rendered
                continue
            assert "ON CLUSTER `crumb`" in rendered
            ddl_without_engine = rendered.lstrip().startswith(
                ("ALTER TABLE", "DROP TABLE", "CREATE VIEW", "TRUNCATE TABLE", "EXCHANGE TABLES"))
            assert "ENGINE = Replicated" in rendered or ddl_without_engine
