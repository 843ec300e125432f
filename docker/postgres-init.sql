-- one server, one database per tenant of it
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
CREATE DATABASE evguard;
