-- ToteSys, the operational database (see docs: totesys-schema.md).
-- Timestamps are timestamp without time zone, written with now() by the application.
CREATE TABLE currency (
    currency_id serial PRIMARY KEY,
    currency_code varchar(3) NOT NULL,
    created_at timestamp NOT NULL DEFAULT now(),
    last_updated timestamp NOT NULL DEFAULT now()
);
CREATE TABLE department (
    department_id serial PRIMARY KEY,
    department_name varchar NOT NULL,
    location varchar,
    manager varchar,
    created_at timestamp NOT NULL DEFAULT now(),
    last_updated timestamp NOT NULL DEFAULT now()
);
CREATE TABLE address (
    address_id serial PRIMARY KEY,
    address_line_1 varchar NOT NULL,
    address_line_2 varchar,
    district varchar,
    city varchar NOT NULL,
    postal_code varchar NOT NULL,
    country varchar NOT NULL,
    phone varchar NOT NULL,
    created_at timestamp NOT NULL DEFAULT now(),
    last_updated timestamp NOT NULL DEFAULT now()
);
CREATE TABLE staff (
    staff_id serial PRIMARY KEY,
    first_name varchar NOT NULL,
    last_name varchar NOT NULL,
    department_id int NOT NULL REFERENCES department,
    email_address varchar NOT NULL,
    created_at timestamp NOT NULL DEFAULT now(),
    last_updated timestamp NOT NULL DEFAULT now()
);
CREATE TABLE counterparty (
    counterparty_id serial PRIMARY KEY,
    counterparty_legal_name varchar NOT NULL,
    legal_address_id int NOT NULL REFERENCES address,
    commercial_contact varchar,
    delivery_contact varchar,
    created_at timestamp NOT NULL DEFAULT now(),
    last_updated timestamp NOT NULL DEFAULT now()
);
CREATE TABLE design (
    design_id serial PRIMARY KEY,
    design_name varchar NOT NULL,
    file_location varchar NOT NULL,
    file_name varchar NOT NULL,
    created_at timestamp NOT NULL DEFAULT now(),
    last_updated timestamp NOT NULL DEFAULT now()
);
CREATE TABLE payment_type (
    payment_type_id serial PRIMARY KEY,
    payment_type_name varchar NOT NULL,
    created_at timestamp NOT NULL DEFAULT now(),
    last_updated timestamp NOT NULL DEFAULT now()
);
CREATE TABLE sales_order (
    sales_order_id serial PRIMARY KEY,
    design_id int NOT NULL REFERENCES design,
    staff_id int NOT NULL REFERENCES staff,
    counterparty_id int NOT NULL REFERENCES counterparty,
    units_sold int NOT NULL,
    unit_price numeric(10, 2) NOT NULL,
    currency_id int NOT NULL REFERENCES currency,
    agreed_delivery_date varchar NOT NULL,
    agreed_payment_date varchar NOT NULL,
    agreed_delivery_location_id int NOT NULL REFERENCES address,
    created_at timestamp NOT NULL DEFAULT now(),
    last_updated timestamp NOT NULL DEFAULT now()
);
CREATE TABLE purchase_order (
    purchase_order_id serial PRIMARY KEY,
    staff_id int NOT NULL REFERENCES staff,
    counterparty_id int NOT NULL REFERENCES counterparty,
    item_code varchar NOT NULL,
    item_quantity int NOT NULL,
    item_unit_price numeric NOT NULL,
    currency_id int NOT NULL REFERENCES currency,
    agreed_delivery_date varchar NOT NULL,
    agreed_payment_date varchar NOT NULL,
    agreed_delivery_location_id int NOT NULL REFERENCES address,
    created_at timestamp NOT NULL DEFAULT now(),
    last_updated timestamp NOT NULL DEFAULT now()
);
CREATE TABLE transaction (
    transaction_id serial PRIMARY KEY,
    transaction_type varchar NOT NULL,
    sales_order_id int REFERENCES sales_order,
    purchase_order_id int REFERENCES purchase_order,
    created_at timestamp NOT NULL DEFAULT now(),
    last_updated timestamp NOT NULL DEFAULT now()
);
CREATE TABLE payment (
    payment_id serial PRIMARY KEY,
    transaction_id int NOT NULL REFERENCES transaction,
    counterparty_id int NOT NULL REFERENCES counterparty,
    payment_amount numeric NOT NULL,
    currency_id int NOT NULL REFERENCES currency,
    payment_type_id int NOT NULL REFERENCES payment_type,
    paid boolean NOT NULL,
    payment_date varchar NOT NULL,
    company_ac_number int NOT NULL,
    counterparty_ac_number int NOT NULL,
    created_at timestamp NOT NULL DEFAULT now(),
    last_updated timestamp NOT NULL DEFAULT now()
);
CREATE INDEX ON sales_order (last_updated);
CREATE INDEX ON purchase_order (last_updated);
CREATE INDEX ON transaction (last_updated);
CREATE INDEX ON payment (last_updated);
CREATE INDEX ON design (last_updated);
