//! [`TestDatabase`]: a PostgreSQL database of its own per test, for the
//! shared-state tests.

/// A PostgreSQL database of its own for one test, dropped with the value.
/// The server is `TEST_POSTGRES_URL` (default: the local one, as the role
/// `scripts/test` creates).
pub struct TestDatabase {
    admin: String,
    name: String,
    /// The database's URL.
    pub url: String,
}

impl TestDatabase {
    /// Creates a fresh database.
    pub async fn create() -> Self {
        use sqlx::Connection;
        let admin = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://reelfleet_test:reelfleet_test@127.0.0.1:5432/postgres".into());
        let name = format!("rf_test_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL reachable (scripts/test installs and starts it; TEST_POSTGRES_URL names another)");
        let create = format!("CREATE DATABASE {name}");
        sqlx::query(&create).execute(&mut conn).await.expect("create database");
        let _ = conn.close().await;
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin.clone());
        Self { url: format!("{base}/{name}"), admin, name }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(&drop).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}
