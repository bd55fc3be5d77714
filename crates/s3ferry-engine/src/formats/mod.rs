//! File formats shared by jobs: the streaming PAX tar of bundle shards and archive volumes, and
//! the CSV dialects of S3 Batch Operations and S3 Inventory.

pub mod csv;
pub mod inventory;
pub mod tar;
