-- The stored card's type (VISA, MASTERCARD, ...) a charge is made on: the card gateway
-- names a shopper's cards by last four digits and type, and two cards of one shopper
-- can share the digits. Charges recorded before this name the digits only.
ALTER TABLE charges ADD COLUMN brand text NOT NULL DEFAULT '';
