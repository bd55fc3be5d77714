//! File formats shared by jobs: the streaming PAX tar of bundle shards and archive volumes.

pub mod tar;
