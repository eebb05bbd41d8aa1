"""Interoperability with other toolkits: Transformers and CTranslate2 exports and backends."""
