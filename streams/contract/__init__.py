"""What every event on the bus is: envelope, Avro codec, signatures, reasons, topics, catalogue."""
