-- reserved for the checkout details (branch payment)
SELECT 1;
