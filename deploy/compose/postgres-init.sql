-- One database per service: each owns its tables and its schema_migrations record.
CREATE DATABASE finetune_data OWNER finetune;
CREATE DATABASE finetune_trainer OWNER finetune;
CREATE DATABASE finetune_eval OWNER finetune;
CREATE DATABASE finetune_inference OWNER finetune;
CREATE DATABASE finetune_console OWNER finetune;
